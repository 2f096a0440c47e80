"""Coverage feedback against the instrumented C virtiofsd: does it reach more daemon code?

Same machine, same seconds, one run, one after the other (never two daemons at once):

1. **edges**: the live single-request loop (:func:`fuseproto.fuzz.virtiofsd.fuzz_daemon`;
   ``--sequences``: the sequence programs) against ``c-asan-cov`` for ``--seconds``
   (default 300) with coverage feedback (inputs that light new daemon edges are kept and
   picked more often), then for the same time with the outcome-class heuristic alone
   (``feedback="outcome"``: the map is still read, to count, but steers nothing). Both
   start from the seeds only (no saved corpus) with the same seed. Printed: the edges each
   reached, at 25/50/100% of the time, and the ratio (goal >= 1.5x), and the same for
   the edges added after the seeds had run (``seeds``: both arms send the same seeds
   first, which light most of what single requests ever reach);
2. **requests/s**: the same loop for ``--rate-seconds`` (default 20) against
   ``c-asan-cov`` (edges read after every request) and against the packaged ``c`` build
   (plain): the price of ASan + UBSan + coverage, as a ratio; ``c-asan-cov`` again with
   every daemon started in line (``spare=False``): what its warm spares (each daemon with
   its own edge map) are worth; and without restarts (the clean seed requests replayed
   for up to 10 s each), the price per request alone.

``--targets`` runs several live targets in each arm, one after the other, the seconds
split evenly, all folding into one edge map (the union the live fuzzer reached):
``requests``, ``sequences``, ``chains`` (hostile descriptor chains), ``control_plane``
(vhost-user front-end programs), or ``all``; the new edges each added are printed too.

``--pairs N`` runs N pairs of arms (seeds ``--seed``, +1, ...), every other pair in the
other order, and prints the median ratios: on a shared machine the load drifts between
two arms run one after the other (the same arm's requests/s varied 230-480 on a
2-core box at load 7-11), and a single pair's ratio carries that drift. Each arm's CPU
seconds (this process and the daemons it reaped) give requests per CPU-second beside
requests/s.

Run: ``.venv/bin/python benchmarks/bench_coverage.py [--seconds 300] [--rate-seconds 20]
[--seed 0] [--pairs 1] [--configs] [--sequences | --targets all] [--save-edges DIR]
[--json]``; ``--save-edges`` keeps each arm's edges for ``benchmarks/coverage_ceiling.py``
(which of the binary's edges were reached, by part, and how many could be). Needs ``fuseproto daemons build c-asan-cov``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from fuseproto import daemons
from fuseproto.fuzz import virtiofsd
from fuseproto.fuzz.coverage import CoverageMap
from fuseproto.fuzz.findings import FindingStore
from fuseproto.fuzz.sequences import fuzz_sequences


def _edges_at(timeline: list[list[float]], t: float) -> int:
    return int(max((p[1] for p in timeline if p[0] <= t), default=0))


#: The live targets an arm can run (``--targets``), each for its share of the seconds.
TARGETS = ("requests", "sequences", "chains", "control_plane")


def run_target(inst: daemons.Installation, target: str, seconds: float, seed: int,
               feedback: str, cov: CoverageMap, store: FindingStore, spare: bool = True,
               configs: bool = False) -> Any:
    """One live target for ``seconds`` on ``inst``, its edges folded into ``cov``
    (``spare``: the single-request loop and the sequence programs take warm spares;
    ``configs``: the single-request loop and the sequence programs vary their daemons'
    options)."""
    from fuseproto.fuzz.chains import fuzz_chains
    from fuseproto.fuzz.control_plane import fuzz_control_plane

    kw = {"seconds": seconds, "store": store, "seed": seed, "feedback": feedback,
          "label": inst.variant, "coverage": cov}
    if target == "sequences":
        return fuzz_sequences(inst, spare=spare, configs=configs, **kw)
    if target == "chains":
        return fuzz_chains(inst, **kw)
    if target == "control_plane":
        return fuzz_control_plane(inst, **kw)
    return virtiofsd.fuzz_daemon(inst, spare=spare, configs=configs, **kw)


def run_arm(inst: daemons.Installation, seconds: float, seed: int, feedback: str,
            targets: tuple[str, ...], spare: bool = True, configs: bool = False,
            save_edges: str | None = None) -> dict[str, Any]:
    """One arm: ``targets`` one after the other (``seconds`` split evenly), all folding
    into one edge map, so the edges are the union the live fuzzer reached. ``save_edges``:
    a directory to write the arm's seen edges to (``<feedback>-seed<seed>.edges``, one
    byte per counter, 1: seen; what ``benchmarks/coverage_ceiling.py`` reads)."""
    share = seconds / len(targets)
    cpu0 = _cpu()
    per: dict[str, int] = {}
    requests = starts = corpus = classes = findings = 0
    seed_edges = 0
    with tempfile.TemporaryDirectory(prefix="bench-cov-") as tmp, \
            CoverageMap.create() as cov:
        store = FindingStore(tmp)
        for t in targets:
            before = cov.seen
            st = run_target(inst, t, share, seed, feedback, cov, store, spare, configs)
            per[t] = cov.seen - before
            requests += getattr(st, "requests", 0) or getattr(st, "inputs", 0) \
                or getattr(st, "programs", 0)
            starts += getattr(st, "starts", 0)
            corpus += st.corpus_size
            classes += getattr(st, "outcome_classes", 0) or len(st.classes)
            if t in ("requests", "sequences") and not seed_edges:
                seed_edges = st.seed_edges
        cov.sample()
        e = cov.summary()
        findings = len(store)
        edges_file = ""
        if save_edges:
            os.makedirs(save_edges, exist_ok=True)
            edges_file = os.path.join(save_edges, f"{feedback}-seed{seed}.edges")
            with open(edges_file, "wb") as f:
                f.write(cov.seen_bitmap())
    tl = e.get("timeline") or [[0, 0]]
    cpu = _cpu() - cpu0
    return {"cpu_seconds": round(cpu, 1),
            "per_cpu_second": round(requests / cpu, 1) if cpu > 0 else 0.0,"feedback": feedback, "daemon": inst.variant, "targets": list(targets),
            "spare": spare,
            "seconds": round(seconds, 1), "requests": requests,
            "per_second": round(requests / seconds, 1) if seconds else 0.0,
            "edges": e.get("edges", 0), "guards": e.get("guards", 0),
            "seed_edges": seed_edges, "per_target": per,
            "edges_25": _edges_at(tl, seconds / 4), "edges_50": _edges_at(tl, seconds / 2),
            "outcome_classes": classes, "corpus": corpus,
            "findings": findings, "starts": starts, "edges_file": edges_file}


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the daemons it stopped)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f} {five:.1f} {fifteen:.1f}"


def steady_rate(inst: daemons.Installation, seconds: float) -> float:
    """Requests/s with no restarts: the seed requests that get a clean answer, sent again
    and again to one daemon (the edge map read after each, as the fuzz loop does)."""
    from fuseproto.fuzz.harness import DaemonHarness
    from fuseproto.wire import structs
    from fuseproto.wire.constants import fuse_opcode as O

    op = structs.FAST["fuse_in_header"]
    skip = (O.FUSE_INTERRUPT, O.FUSE_NOTIFY_REPLY, O.FUSE_FORGET, O.FUSE_BATCH_FORGET,
            O.FUSE_DESTROY, O.FUSE_RELEASE, O.FUSE_RELEASEDIR, O.FUSE_UNLINK, O.FUSE_RMDIR,
            O.FUSE_RENAME, O.FUSE_RENAME2)
    with CoverageMap.create() as cov, DaemonHarness(inst, coverage=cov) as h:
        reqs = [r for r in h.seed_requests() if op.parse(r, 0)["opcode"] not in skip]
        reqs = [r for r in reqs if h.send(r).finding is None]
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            for r in reqs:
                h.send(r)
                cov.update()
            n += len(reqs)
        return n / (time.monotonic() - t0)


def _print_pair(arms: list[dict[str, Any]], targets: tuple[str, ...],
                order: tuple[str, ...]) -> tuple[float, float]:
    """One pair's table (coverage first; ``order``: how they ran); the edge ratio and
    the ratio of edges added after the seeds."""
    print(f"{'feedback':10s} {'edges':>7s} {'seeds':>7s} {'@25%':>7s} {'@50%':>7s} "
          f"{'guards':>7s} {'requests':>9s} {'req/s':>7s} {'req/cpu-s':>9s} {'classes':>8s} "
          f"{'corpus':>7s} {'findings':>8s}")
    for r in arms:
        print(f"{r['feedback']:10s} {r['edges']:7d} {r['seed_edges']:7d} {r['edges_25']:7d} "
              f"{r['edges_50']:7d} {r['guards']:7d} {r['requests']:9d} "
              f"{r['per_second']:7.0f} {r['per_cpu_second']:9.0f} {r['outcome_classes']:8d} "
              f"{r['corpus']:7d} {r['findings']:8d}")
    if len(targets) > 1:
        for r in arms:
            print(f"  {r['feedback']:10s} new edges per target, in order: "
                  + ", ".join(f"{t} {n}" for t, n in r["per_target"].items()))
    cov, out = arms
    ratio = cov["edges"] / out["edges"] if out["edges"] else float("inf")
    # What the mutations added beyond the seeds' own edges (the seeds are the same in both).
    gain = [r["edges"] - r["seed_edges"] for r in arms]
    gain_ratio = gain[0] / gain[1] if gain[1] > 0 else float("inf")
    print(f"edge ratio coverage / outcome-class: {ratio:.2f}x (goal >= 1.5x); edges added "
          f"after the seeds: {gain[0]} vs {gain[1]} ({gain_ratio:.2f}x); ran "
          f"{' then '.join(order)}; {_load()}")
    return ratio, gain_ratio


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=300.0,
                    help="seconds per feedback arm (default 300)")
    ap.add_argument("--rate-seconds", type=float, default=20.0,
                    help="seconds per daemon for requests/s (default 20; 0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sequences", action="store_true",
                    help="compare with sequence programs instead of single requests "
                         "(the same as --targets sequences)")
    ap.add_argument("--configs", action="store_true",
                    help="the single-request loop and the sequence programs give each "
                         "daemon options of its own (fuseproto.fuzz.configs), in both arms")
    ap.add_argument("--targets", default="requests",
                    help="comma-separated live targets each arm runs one after the other, "
                         f"the seconds split evenly, edges united: {', '.join(TARGETS)}, "
                         "or all (default: requests)")
    ap.add_argument("--pairs", type=int, default=1,
                    help="pairs of arms (seeds seed, seed+1, ...), each pair's order the "
                         "other way round from the last (a load that drifts on a shared "
                         "machine favours neither); the medians of the ratios are printed")
    ap.add_argument("--save-edges", metavar="DIR",
                    help="write each feedback arm's seen edges to DIR/<feedback>-seed<N>.edges "
                         "(one byte per counter; read by benchmarks/coverage_ceiling.py)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line")
    a = ap.parse_args(argv)
    inst = daemons.find("c-asan-cov")
    if inst is None:
        print("bench_coverage: c-asan-cov is not built (fuseproto daemons build c-asan-cov)",
              file=sys.stderr)
        return 2
    targets = TARGETS if a.targets == "all" else tuple(a.targets.split(","))
    if a.sequences:
        targets = ("sequences",)
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"--targets: unknown {', '.join(bad)} (one of {', '.join(TARGETS)}, all)")
    mode = " + ".join(targets)
    result: dict[str, Any] = {"seconds": a.seconds, "mode": mode, "pairs": []}
    ratios: list[float] = []
    gain_ratios: list[float] = []
    for k in range(max(1, a.pairs)):
        seed = a.seed + k
        print(f"== daemon edges in {a.seconds:.0f} s, {mode}, c-asan-cov "
              f"({inst.instrumentation}), seed {seed}, {_load()}")
        order = ("coverage", "outcome") if k % 2 == 0 else ("outcome", "coverage")
        ran = {fb: run_arm(inst, a.seconds, seed, fb, targets, configs=a.configs,
                           save_edges=a.save_edges)
               for fb in order}
        arms = [ran["coverage"], ran["outcome"]]
        ratio, gain_ratio = _print_pair(arms, targets, order)
        ratios.append(ratio)
        gain_ratios.append(gain_ratio)
        result["pairs"].append({"seed": seed, "order": list(order), "arms": arms,
                                "edge_ratio": round(ratio, 3),
                                "gain_ratio": round(gain_ratio, 3)})
    result["arms"] = result["pairs"][0]["arms"]  # the first pair (as before --pairs)
    result["edge_ratio"] = round(statistics.median(ratios), 3)
    result["gain_ratio"] = round(statistics.median(gain_ratios), 3)
    if len(ratios) > 1:
        print(f"median of {len(ratios)} pairs: edge ratio {result['edge_ratio']:.2f}x "
              f"(each {', '.join(f'{r:.2f}' for r in ratios)}); after the seeds "
              f"{result['gain_ratio']:.2f}x (each {', '.join(f'{r:.2f}' for r in gain_ratios)}); "
              f"{_load()}")
    if a.rate_seconds > 0:
        plain = daemons.find("c") or daemons.install("c")
        print(f"== requests/s in the live loop, {a.rate_seconds:.0f} s each")
        rates = [run_arm(plain, a.rate_seconds, a.seed, "auto", targets[:1]),
                 run_arm(inst, a.rate_seconds, a.seed, "auto", targets[:1]),
                 run_arm(inst, a.rate_seconds, a.seed, "auto", targets[:1], spare=False)]
        for r in rates:
            how = "warm spares" if r["spare"] else "starts in line"
            print(f"{r['daemon']:12s} {how:15s} {r['per_second']:8.0f} requests/s "
                  f"({r['requests']} requests, {r['starts']} daemon starts, "
                  f"{r['edges']} edges)")
        slow = rates[0]["per_second"] / rates[1]["per_second"] if rates[1]["per_second"] else 0
        gain = rates[1]["per_second"] / rates[2]["per_second"] if rates[2]["per_second"] else 0
        print(f"packaged c / c-asan-cov: {slow:.2f}x (the loop restarts a daemon after every "
              "crash, a program starts on a fresh one: start-up dominates); c-asan-cov with "
              f"warm spares / starts in line: {gain:.2f}x")
        result["spare_gain"] = round(gain, 3)
        steady = [steady_rate(plain, min(10.0, a.rate_seconds)),
                  steady_rate(inst, min(10.0, a.rate_seconds))]
        print(f"no restarts (clean seed requests replayed): c {steady[0]:.0f}/s, c-asan-cov "
              f"{steady[1]:.0f}/s, {steady[0] / steady[1]:.2f}x")
        result["rates"] = rates
        result["rate_ratio"] = round(slow, 3)
        result["steady"] = {"c": round(steady[0], 1), "c-asan-cov": round(steady[1], 1)}
    if a.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
