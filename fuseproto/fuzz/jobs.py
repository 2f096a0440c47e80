"""Scale-out: ``--jobs N`` for every target, with merged corpora and one result.

* **atheris targets** run under libFuzzer's own ``-fork=N`` (N child processes, their new
  inputs merged into the first corpus directory, a crash ends the run as usual). libFuzzer
  starts each job by running ``argv[0]`` again through the shell, and an atheris harness's
  ``argv[0]`` is a ``.py`` file that need not be executable: :func:`libfuzzer_argv` puts
  a small executable launcher in its place (``<out>/bin/<target>_fuzzer``, a ``#!`` line
  naming this interpreter, then the harness run as ``__main__``).
* **live targets** (the virtiofsd requests and sequences loops; the descriptor chains,
  the control plane and the C-vs-Rust differential: :data:`LOOPS`) and the in-process
  loop run in N worker processes (``python -m fuseproto.fuzz.jobs DIR``), each with its own
  daemons (every :class:`~fuseproto.fuzz.harness.DaemonHarness` makes its own scratch
  directory, socket and log), its own seed (``seed + i``), its own edge map and finding
  store. Inputs that lit new daemon edges go to the one corpus directory they share
  (entries are named by their SHA-1, so the workers' saves merge); at the end the
  workers' findings are adopted by the caller's store (same signature: counts add up),
  their statistics summed and their edge sets united (:func:`fuzz_live`,
  :func:`run_inprocess`, :func:`run_loop_jobs`: counters add up, durations take the
  longest, per-class and per-signature counts merge).

Workers are started and stopped by PID (their own process group): each has ``seconds``
plus a grace period, then SIGTERM (a worker stops its daemons and exits), then SIGKILL.
Their directories (``<out>/.jobs-*``) are removed when the results are in, also after a
failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .engine import LoopStats
from .findings import Finding, FindingStore
from .forensics import count_slow
from .virtiofsd import DaemonStats

__all__ = ["libfuzzer_argv", "fork_requested", "run_workers", "fuzz_live", "run_inprocess",
           "run_loop_jobs", "LIVE_MODES", "LOOPS", "GRACE_S"]

#: The live loops a worker can run.
LIVE_MODES = ("requests", "sequences")
#: Seconds a worker may run past its budget (daemon restarts, a last shrink) before it is
#: asked to stop.
GRACE_S = 30.0

_LAUNCHER = """#!{python}
# libFuzzer -fork / -jobs start each job by running argv[0] again: this file stands for
# the atheris harness below (written by fuseproto.fuzz.jobs.libfuzzer_argv).
import sys

HARNESS = {script!r}
sys.path.insert(0, {folder!r})
with open(HARNESS) as f:
    code = compile(f.read(), HARNESS, "exec")
exec(code, {{"__name__": "__main__", "__file__": HARNESS}})
"""


def fork_requested(args: list[str]) -> bool:
    """The user already asked libFuzzer for parallel jobs."""
    return any(a.startswith(("-fork=", "-jobs=", "-workers=")) for a in args)


def libfuzzer_argv(script: Path, jobs: int, workdir: Path,
                   extra: list[str] | None = None) -> list[str]:
    """How to start atheris harness ``script``: ``[python, script]``, or for ``jobs`` > 1
    ``[python, launcher, -fork=jobs]`` with the launcher written under ``workdir/bin``
    (unless ``extra`` already asks libFuzzer for jobs)."""
    if jobs <= 1 or fork_requested(extra or []):
        return [sys.executable, str(script)]
    bindir = workdir / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    launcher = (bindir / script.stem).resolve()
    launcher.write_text(_LAUNCHER.format(python=sys.executable, script=str(script.resolve()),
                                         folder=str(script.resolve().parent)))
    launcher.chmod(0o755)
    return [sys.executable, str(launcher), f"-fork={jobs}"]


# -- worker processes --------------------------------------------------------------------------
def run_workers(kind: str, specs: list[dict[str, Any]], *, seconds: float, workdir: Path,
                ) -> list[dict[str, Any]]:
    """Run one worker of ``kind`` (a key of :data:`_WORKERS`) per spec in parallel, each
    in its own directory under ``workdir``; each one's result (``{"error": ...}`` when it
    gave none)."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i, spec in enumerate(specs):
            d = workdir / f"worker-{i}"
            d.mkdir(parents=True)
            (d / "spec.json").write_text(json.dumps({"kind": kind, "args": spec}))
            with open(d / "worker.log", "wb") as log:
                procs.append((subprocess.Popen(
                    [sys.executable, "-m", "fuseproto.fuzz.jobs", str(d)], stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True), d))
        deadline = time.monotonic() + seconds + GRACE_S
        for p, _ in procs:
            _wait_or_stop(p, deadline)
    finally:
        for p, _ in procs:  # an exception above: none is left running
            if p.poll() is None:
                _stop(p)
    out = []
    for p, d in procs:
        try:
            out.append(json.loads((d / "result.json").read_text()))
        except (OSError, ValueError):
            tail = (d / "worker.log").read_text(errors="replace")[-1500:]
            out.append({"error": f"worker {d.name} exited {p.returncode} without a result: "
                                 f"{tail}"})
    return out


def _wait_or_stop(p: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop(p)


def _stop(p: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the worker closes its daemons), then SIGKILL to its process group."""
    with contextlib.suppress(ProcessLookupError):
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _stats_json(st: Any) -> dict[str, Any]:
    d = {f.name: getattr(st, f.name) for f in dataclasses.fields(st)
         if f.name != "findings" and not _finding_list(getattr(st, f.name))}
    out: dict[str, Any] = json.loads(json.dumps(d, default=str))
    return out


def _live_worker(d: Path, *, mode: str, spec: str, kind: str | None, label: str,
                 seconds: float, seed: int, hang_timeout: float, feedback: str,
                 corpus_dir: str | None, env: dict[str, str] | None = None,
                 configs: bool = False) -> dict[str, Any]:
    from .coverage import CoverageMap
    from .harness import resolve_installation
    from .sequences import fuzz_sequences
    from .virtiofsd import fuzz_daemon

    inst = resolve_installation(spec, kind)
    store = FindingStore(d / "findings")
    cov = CoverageMap.create()
    try:
        common: dict[str, Any] = {
            "seconds": seconds, "store": store, "seed": seed, "hang_timeout": hang_timeout,
            "label": label, "coverage": cov, "feedback": feedback, "corpus_dir": corpus_dir}
        st = fuzz_daemon(inst, configs=configs, **common) if mode == "requests" \
            else fuzz_sequences(inst, **common)
        if st.edges:
            (d / "edges.bin").write_bytes(cov.seen_bitmap())
    finally:
        cov.close()
    return {"stats": _stats_json(st), "findings": store.to_json(),
            "edges_file": str(d / "edges.bin") if st.edges else None}


def _inprocess_worker(d: Path, *, target: str, seconds: float, seed: int) -> dict[str, Any]:
    from . import engine, inject, registry

    inject.apply_from_env()  # a planted fault (tests), as the atheris harnesses do
    store = FindingStore(d / "findings")
    st = engine.run_loop(registry.get_target(target), seconds=seconds, seed=seed, store=store)
    return {"stats": _stats_json(st), "findings": store.to_json()}


def _chains(insts: list[Any], labels: list[str], seconds: float, store: FindingStore,
            seed: int, timeout: float) -> Any:
    from .chains import fuzz_chains

    return fuzz_chains(insts[0], seconds=seconds, store=store, seed=seed, label=labels[0],
                       timeout=timeout)


def _control_plane(insts: list[Any], labels: list[str], seconds: float,
                   store: FindingStore, seed: int, timeout: float) -> Any:
    from .control_plane import fuzz_control_plane

    return fuzz_control_plane(insts[0], seconds=seconds, store=store, seed=seed,
                              label=labels[0], timeout=timeout)


def _diff(insts: list[Any], labels: list[str], seconds: float, store: FindingStore,
          seed: int, timeout: float) -> Any:
    from .diff import fuzz_diff

    return fuzz_diff(insts[0], insts[1], seconds=seconds, store=store, seed=seed,
                     hang_timeout=timeout, labels=(labels[0], labels[1]))


#: The other live loops by target name: (installations, labels, seconds, store, seed,
#: timeout) -> the loop's statistics (a dataclass with ``findings``).
LOOPS: dict[str, Callable[..., Any]] = {
    "chains": _chains,
    "control_plane": _control_plane,
    "diff": _diff,
}


def _loop_worker(d: Path, *, loop: str, specs: list[str], kind: str | None,
                 labels: list[str], seconds: float, seed: int, timeout: float
                 ) -> dict[str, Any]:
    from .harness import resolve_installation

    insts = [resolve_installation(s, kind if i == 0 else None) for i, s in enumerate(specs)]
    store = FindingStore(d / "findings")
    st = LOOPS[loop](insts, labels, seconds, store, seed, timeout)
    lists = {f.name: [x.signature for x in getattr(st, f.name)]
             for f in dataclasses.fields(st) if _finding_list(getattr(st, f.name))}
    return {"stats": {k: v for k, v in _stats_json(st).items() if k not in lists},
            "lists": lists, "findings": store.to_json()}


def _finding_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Finding)


_WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "live": _live_worker,
    "inprocess": _inprocess_worker,
    "loop": _loop_worker,
}


def _worker_main(d: Path) -> int:
    spec = json.loads((d / "spec.json").read_text())

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds: harnesses stop their daemons

    signal.signal(signal.SIGTERM, stop)
    result = _WORKERS[spec["kind"]](d, **spec["args"])
    tmp = d / "result.json.tmp"
    tmp.write_text(json.dumps(result, default=str))
    tmp.rename(d / "result.json")
    return 0


# -- merging -----------------------------------------------------------------------------------
def _adopt(store: FindingStore, results: list[dict[str, Any]]) -> list[Finding]:
    """The workers' findings into ``store``; the stored findings, one per signature."""
    names = {f.name for f in dataclasses.fields(Finding)}
    got: dict[str, Finding] = {}
    for r in results:
        for fj in r.get("findings", ()):
            f = store.adopt(Finding(**{k: v for k, v in fj.items() if k in names}))
            got.setdefault(f.signature, f)
    return list(got.values())


def _union(files: list[str | None], prior: bytes | None) -> bytes | None:
    maps = [Path(p).read_bytes() for p in files if p and Path(p).exists()]
    if prior is not None:
        maps.append(prior)
    if not maps:
        return None
    size = max(len(m) for m in maps)
    acc = 0
    for m in maps:
        acc |= int.from_bytes(m.ljust(size, b"\0"), "little")
    return acc.to_bytes(size, "little")


def _merge_edges(stats: list[dict[str, Any]], union: bytes | None, jobs: int
                 ) -> dict[str, Any]:
    edges = [s["edges"] for s in stats if s.get("edges")]
    if not edges or union is None:
        return {}
    first = edges[0]
    # The union over time is not known; each point is the best single job's count then.
    points = sorted({tuple(p) for e in edges for p in e.get("timeline", ())})
    timeline: list[list[float]] = []
    best: dict[int, float] = {}
    for t, n in points:
        for i, e in enumerate(edges):
            if [t, n] in e.get("timeline", ()):
                best[i] = n
        timeline.append([t, max(best.values())])
    n_union = len(union) - union.count(0)
    timeline.append([max((p[0] for p in timeline), default=0.0), n_union])
    return dict(first, edges=n_union, guards=max(e.get("guards", 0) for e in edges),
                timeline=timeline, jobs=jobs, edges_per_job=[e.get("edges", 0) for e in edges],
                seed_edges=max(e.get("seed_edges", 0) for e in edges))


def _merge_sequences(parts: list[dict[str, Any]]) -> dict[str, Any]:
    from .sequences import DEPTHS

    parts = [p for p in parts if p]
    if not parts:
        return {}
    out: dict[str, Any] = {"programs": 0, "requests": 0, "depths": {}, "mappings": {},
                           "findings": []}
    for p in parts:
        out["programs"] += p.get("programs", 0)
        out["requests"] += p.get("requests", 0)
        for key in ("depths", "mappings"):
            for k, v in (p.get(key) or {}).items():
                out[key][k] = out[key].get(k, 0) + v
        out["findings"] += [s for s in p.get("findings", ()) if s not in out["findings"]]
    deepest = [p["deepest"] for p in parts if p.get("deepest") in DEPTHS]
    out["deepest"] = max(deepest, key=DEPTHS.index) if deepest else DEPTHS[0]
    out["mappings"] = dict(sorted(out["mappings"].items()))
    return out


def _jobs_dir(workdir: Path | None) -> Path:
    base = workdir if workdir is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".jobs-", dir=base))


def fuzz_live(mode: str, spec: str, *, jobs: int, seconds: float, store: FindingStore,
              label: str, seed: int = 0, kind: str | None = None, hang_timeout: float = 0.5,
              feedback: str = "auto", corpus_dir: str | Path | None = None,
              workdir: Path | None = None, prior_edges: bytes | None = None,
              configs: bool = False) -> tuple[DaemonStats, bytes | None]:
    """Run live loop ``mode`` (``requests`` / ``sequences``) on daemon ``spec`` in
    ``jobs`` parallel workers for ``seconds``; their findings go to ``store``. Returns the
    merged statistics (summed; edges: the union of the workers' edge sets, and of
    ``prior_edges``) and that union (None for a plain daemon)."""
    if mode not in LIVE_MODES:
        raise ValueError(f"mode: one of {', '.join(LIVE_MODES)}, not {mode!r}")
    jd = _jobs_dir(workdir)
    try:
        specs = [{"mode": mode, "spec": spec, "kind": kind, "label": label,
                  "seconds": seconds, "seed": seed + i, "hang_timeout": hang_timeout,
                  "feedback": feedback, "configs": configs,
                  "corpus_dir": str(corpus_dir) if corpus_dir is not None else None}
                 for i in range(jobs)]
        results = run_workers("live", specs, seconds=seconds, workdir=jd)
        found = _adopt(store, results)
        union = _union([r.get("edges_file") for r in results], prior_edges)
    finally:
        shutil.rmtree(jd, ignore_errors=True)
    parts = [r["stats"] for r in results if "stats" in r]
    st = DaemonStats(label)
    st.findings = found
    errors = [r["error"] for r in results if r.get("error")]
    errors += [f"job {i}: {p['error']}" for i, p in enumerate(parts) if p.get("error")]
    st.error = "; ".join(errors)[:2000] or None
    for p in parts:
        st.version = st.version or p.get("version", "")
        st.requests += p.get("requests", 0)
        st.starts += p.get("starts", 0)
        st.skipped += p.get("skipped", 0)
        st.corpus_size += p.get("corpus_size", 0)
        st.corpus_saved += p.get("corpus_saved", 0)
        st.corpus_loaded = max(st.corpus_loaded, p.get("corpus_loaded", 0))
        st.seed_edges = max(st.seed_edges, p.get("seed_edges", 0))
        st.seconds = max(st.seconds, p.get("seconds", 0.0))
        for k, v in (p.get("classes") or {}).items():
            st.classes[k] = st.classes.get(k, 0) + v
        st.add_slow(p.get("slow") or {})
    st.outcome_classes = len(st.classes)
    st.sequences = _merge_sequences([p.get("sequences") or {} for p in parts])
    if st.sequences:
        st.sequences["findings"] = [f.signature for f in found]
    st.edges = _merge_edges(parts, union, jobs)
    return st, union


def run_inprocess(target: str, *, jobs: int, seconds: float, store: FindingStore,
                  seed: int = 0, workdir: Path | None = None) -> LoopStats:
    """The in-process loop of ``target`` in ``jobs`` parallel workers (seeds ``seed + i``);
    their findings go to ``store``; the summed statistics."""
    jd = _jobs_dir(workdir)
    try:
        specs = [{"target": target, "seconds": seconds, "seed": seed + i} for i in range(jobs)]
        results = run_workers("inprocess", specs, seconds=seconds, workdir=jd)
        found = _adopt(store, results)
    finally:
        shutil.rmtree(jd, ignore_errors=True)
    st = LoopStats(target, findings=found)
    for r in results:
        p = r.get("stats") or {}
        st.iterations += p.get("iterations", 0)
        st.seconds = max(st.seconds, p.get("seconds", 0.0))
        st.corpus_size += p.get("corpus_size", 0)
        st.outcome_classes = max(st.outcome_classes, p.get("outcome_classes", 0))
    return st


#: Counters that are a number of distinct things: the largest job's, not a sum.
_DISTINCT = ("outcome_classes", "corpus_loaded", "seed_edges")


def _merge_value(name: str, values: list[Any]) -> Any:
    """One field of several jobs' statistics, merged (see the module docstring)."""
    if not values:
        return None
    first = values[0]
    if name == "edges":  # each job had its own edge map: the best one is a lower bound
        return dict(max(values, key=lambda e: (e or {}).get("edges", 0)) or {})
    if name == "slow":  # name -> [count, longest wait]: counts add, the longest wins
        slow: dict[str, list[float]] = {}
        for v in values:
            for op, (n, worst) in (v or {}).items():
                count_slow(slow, op, int(n), worst)
        return slow
    if isinstance(first, bool):
        return any(values)
    if isinstance(first, int | float) and all(isinstance(v, int | float) for v in values):
        return max(values) if name in _DISTINCT or name == "seconds" else sum(values)
    if isinstance(first, dict):
        out: dict[str, Any] = {}
        for v in values:
            for k, x in v.items():
                if k not in out:
                    out[k] = dict(x) if isinstance(x, dict) else x
                elif isinstance(x, int | float) and not isinstance(x, bool):
                    out[k] += x
                elif isinstance(x, dict) and isinstance(x.get("count"), int):
                    out[k]["count"] += x["count"]
        return out
    if isinstance(first, list):
        merged: list[Any] = []
        for v in values:
            merged += [x for x in v if x not in merged]
        return merged
    if name == "error":
        return "; ".join(str(v) for v in values if v)[:2000] or None
    return next((v for v in values if v), first)


def run_loop_jobs(loop: str, specs: list[str], *, jobs: int, seconds: float,
                  store: FindingStore, labels: list[str], seed: int = 0,
                  kind: str | None = None, timeout: float = 0.5,
                  workdir: Path | None = None) -> Any:
    """Live loop ``loop`` (a key of :data:`LOOPS`) on daemons ``specs`` in ``jobs``
    parallel workers (seeds ``seed + i``, each with its own daemons) for ``seconds``;
    findings go to ``store``; the loop's own statistics type, merged."""
    jd = _jobs_dir(workdir)
    try:
        args = [{"loop": loop, "specs": specs, "kind": kind, "labels": labels,
                 "seconds": seconds, "seed": seed + i, "timeout": timeout}
                for i in range(jobs)]
        results = run_workers("loop", args, seconds=seconds, workdir=jd)
        found = {f.signature: f for f in _adopt(store, results)}
    finally:
        shutil.rmtree(jd, ignore_errors=True)
    done = [r for r in results if "stats" in r]
    if not done:
        raise RuntimeError("; ".join(r.get("error", "?") for r in results)[:2000])
    cls = _STATS[loop]()
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if any(f.name in r.get("lists", {}) for r in done) or f.name == "findings":
            sigs = _merge_value(f.name, [r.get("lists", {}).get(f.name, []) for r in done])
            fields[f.name] = [found[s] for s in sigs or [] if s in found]
            continue
        value = _merge_value(f.name, [r["stats"][f.name] for r in done if f.name in r["stats"]])
        if isinstance(value, list) and f.type in ("tuple[str, str]", "tuple[str, ...]"):
            value = tuple(value)
        fields[f.name] = value
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        fields["error"] = "; ".join(filter(None, [fields.get("error"), *errors]))[:2000]
    return cls(**fields)


def _chain_stats() -> type:
    from .chains import ChainStats

    return ChainStats


def _control_stats() -> type:
    from .control_plane import ControlStats

    return ControlStats


def _diff_stats() -> type:
    from .diff import DiffStats

    return DiffStats


_STATS: dict[str, Callable[[], type]] = {"chains": _chain_stats,
                                         "control_plane": _control_stats,
                                         "diff": _diff_stats}


if __name__ == "__main__":
    sys.exit(_worker_main(Path(sys.argv[1])))
